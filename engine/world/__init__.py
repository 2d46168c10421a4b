"""A whole local world and its simulation: the layout of keys and configs, the services in
one process or as processes, the broker, chaos and the demo."""
