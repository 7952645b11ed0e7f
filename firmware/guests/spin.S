// spin: counts in x1 forever; only its run's budget (a timer interrupt) ever stops it.
	mov	x1, xzr
1:	add	x1, x1, #1
	b	1b
