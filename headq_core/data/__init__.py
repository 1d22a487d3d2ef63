"""Data files shipped with headq_core (the built-in State of the Union corpus under ``sotu/``)."""
