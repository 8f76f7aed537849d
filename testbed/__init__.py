"""The testbed as users run it: services, policies, the legitimate customer and the demo."""
