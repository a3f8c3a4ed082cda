"""The Faust application and the jobs around it."""
