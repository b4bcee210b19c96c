"""Training engine shared by the 3D and 2D tasks: loop, session, state, checkpoints, schedule, distributed."""
