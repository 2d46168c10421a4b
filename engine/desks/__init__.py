"""The desks the coordinator hosts beside the settlement driver: matching, asset servicing,
repo."""
