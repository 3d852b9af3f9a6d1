"""Pieces every followme node shares: image messages, scoring, the node list, the runner."""
