"""Network implementations; importing this package registers each of them."""
