"""What a scan leaves on disk while it is processed: the frame journal (:mod:`.journal`, SQLite) and the
distance store of flat-fielded frames waiting for the other distances (:mod:`.store`, zarr)."""
