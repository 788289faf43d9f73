"""Score a programmer against held-out teacher annotations (`prox evaluate`)."""
