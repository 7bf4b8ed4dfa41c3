"""Full tree walks: what files exist, as FileEvents."""
