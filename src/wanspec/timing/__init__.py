"""Time: the event loop's clock (real or virtual) and the device model every model pass uses."""
