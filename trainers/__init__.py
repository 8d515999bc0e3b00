"""What runs on Ray workers: run spec, Pythia zoo, myopic attention, data, engine, training loop, evaluation."""
