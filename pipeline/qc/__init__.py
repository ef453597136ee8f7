"""Per-case quality control: every prediction checked against its model's training data (inputs and outputs),
its uncertainty, and one score with a review flag (:func:`pipeline.qc.assess.assess_case`)."""
