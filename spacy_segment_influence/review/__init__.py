"""What a person reads: the HTML review page and `explain`'s terminal tables."""
