module kiln.example/kiln

go 1.19
