"""Planning (pure Python: no torch, no IREE): the cost model, the roofline, the platform
descriptions and the planner that ranks placements x gamma. Reads only the contract."""
