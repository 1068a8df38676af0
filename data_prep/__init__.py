"""Data preparation: raw bars -> Qlib binary folder -> leak-free sliding-window splits."""
