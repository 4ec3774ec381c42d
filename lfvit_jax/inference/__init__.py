"""Early-exit prediction: the compiled predictors, the host queue of hard samples, user inputs
and the predict job."""
