"""The deploy stage: register the trained model as a new version, decide promotion with the gate."""
