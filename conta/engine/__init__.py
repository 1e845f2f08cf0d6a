"""Training machinery shared by the stages: devices, seeding, checkpoints, schedules, the loop."""
