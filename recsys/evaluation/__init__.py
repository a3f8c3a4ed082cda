"""Offline (the notebook's time split) and streaming (predict, then update) evaluation, metrics, reports."""
