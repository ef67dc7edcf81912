"""Every shape that crosses a boundary, as msgspec Structs, and every Redis name."""
