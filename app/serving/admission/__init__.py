"""Admission: what a request will cost (planning), whether it could ever finish (feasibility),
and how fast the device goes (throughput), decided before the image is decoded."""
