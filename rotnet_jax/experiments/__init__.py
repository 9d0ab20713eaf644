"""The paper's experiments: its numbers (``paper``), its tables as job
lists (``reproduce``), our results against them (``report``) and pictures
of runs and tables (``plots``)."""
