"""Camera pose refinement: per-frame SE(3) corrections, preconditioning, coarse-to-fine and the drift spline
(:mod:`.correction`); odometry drift bookkeeping for the online mapper (:mod:`.drift`)."""
