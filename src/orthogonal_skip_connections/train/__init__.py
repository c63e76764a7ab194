"""Layer 4, training loops: the image classifier, the seed-stacked small models, the teacher-student runs. Every loop takes its update rules from optim.py."""
