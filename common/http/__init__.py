"""HTTP for both services: the middleware stack (auth, load shedding, body guards) and its parts."""
