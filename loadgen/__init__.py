"""Load generation: open-loop arrivals measured from their scheduled time."""
