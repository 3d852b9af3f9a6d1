"""The embedded MuJoCo simulator: world, drone, scenarios, follow metrics and sim_node."""
