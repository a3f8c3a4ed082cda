"""A trained model: training (implicit ALS/BPR), fold-in of users and of new items, the versioned store."""
