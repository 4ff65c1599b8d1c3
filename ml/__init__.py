"""bwp models: LSTM forecaster, Double-DQN allocator, registry, evaluation."""
