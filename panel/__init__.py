"""The control panel: server-rendered pages and the admin JSON API on 127.0.0.1:2580."""
