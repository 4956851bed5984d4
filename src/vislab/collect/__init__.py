"""`vislab collect`: build a photo folder from Flickr searches or a list of image URLs.

- `http.py`   one HTTP client: evenly spaced API requests, retries with backoff and jitter,
              downloads streamed to a temporary file that is either complete or removed.
- `store.py`  the output folder: finished images, `photos.csv` (attribution), the journal
              that makes a killed run continue where it stopped, exact-duplicate skipping.
- `fetch.py`  the download pool shared by both sources, with its progress bar and tally.
- `flickr.py` `flickr.photos.search`: options, licences, paging, the 4,000-result cap.
- `urls.py`   a plain list of image URLs.

`vislab curate --photos DIR/photos.csv` reads the result (see `vislab.data.photos`).
"""
