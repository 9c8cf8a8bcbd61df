"""The fault, load and hostile-input suite: real processes, real kills, real servers."""
