"""Where pools of workers come from: one module per provider."""
