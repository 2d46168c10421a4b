from tests.harness import harness, world  # noqa: F401  (fixtures)
