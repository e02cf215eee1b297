"""run_pipeline's library: the YAML schema, the plan of steps, the step runner."""
