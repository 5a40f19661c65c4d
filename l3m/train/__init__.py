"""Training: the optimizers and learning-rate schedules a `.l3m` file can name (`optim`,
`schedules`), and the engine that runs a checked program."""
