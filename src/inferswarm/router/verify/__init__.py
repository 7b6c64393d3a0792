"""Verification: consensus over redundant runs, spot checks, reputation, the result ledger."""
