"""Training a run: the driver (``train.train_and_evaluate``), what is
trained (``objectives``), the jitted steps, the epoch loop and its parts
(resume, divergence guard, logging, preemption), the optimiser, metrics,
and the training-free k-NN evaluation the driver also runs."""
