"""The panel's pages, one module per area; each exports `routes`."""
