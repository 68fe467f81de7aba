"""Sharing a student on the Hub: push and pull (``push_pull``: they refuse what the structural checks
fail), the model card (``card``), its images (``card_plots``) and its closed-loop section
(``card_closed_loop``). Hub I/O itself (the repo-id rule, pinned downloads, the error mapping) is
``hub_reflow.hub_io``."""
