"""Authentication and authorisation: citizens, scene partners, merchants, admin users."""
