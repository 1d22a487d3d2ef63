"""Runs jobs: turns stored job specs into headq_core calls and persists results."""
