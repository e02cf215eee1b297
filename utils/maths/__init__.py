"""The maths of the evaluation, numpy only: uncertainty measures and metrics, temperature fitting, what each duo mode means."""
