"""Content-addressed storage with S5's data model (DESIGN §8): BLAKE3 blobs, deterministic
CBOR DirV1 directories, HAMT sharding, signed mutable roots, and Bitswap between peers."""
