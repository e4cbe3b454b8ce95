"""The aligned leak audit: find near-duplicate images that were shifted, mirrored, recropped, recoloured or
re-encoded, in two stages.

1. Candidates: 8x8 pixel features (audit.pixel_features) of several views of each query image (as it
   is and mirrored; its centre enlarged by each of ZOOMS; shifted by up to two pixels each way) against
   the base images' features, and the query against the base's zoomed views. Each search keeps its
   CANDIDATES nearest base images. A shift of half a 4-pixel feature cell, or a crop, moves an image's
   8x8 features as far as a different photograph's; the views put the true source back in the top few.
2. Re-scoring: each candidate pair's best normalised cross-correlation over shifts of up to SHIFT pixels
   either way, the candidate as it is and mirrored, and either image's centre enlarged by each of ZOOMS.
   It runs at 16x16 (area-averaged, four times cheaper) to pick each query's FINALISTS, then at full
   resolution on those, where a one-pixel shift aligns exactly instead of falling between pixels.
3. The final similarity is the mean of that correlation and the same correlation of the images' fine
   detail (each minus its 5x5 local mean). Two photographs of ships on a grey sea can correlate at 0.9
   through their horizon alone; their detail does not, while a re-encoded, recropped copy keeps most of
   it (BENCHMARKS.md, "Leak audit II").

Correlation is taken per colour channel after removing each channel's mean over the compared window,
then averaged over the channels, so a change of brightness or contrast, or a colour cast (a gain and an
offset per channel), leaves it unchanged. The threshold in audit.THRESHOLDS was chosen from planted
copies and judged galleries (BENCHMARKS.md, "Leak audit II").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ZOOMS = (1.0, 1.15, 1.3)  # centre enlarged by these factors (crop 28/32 and 25/32 of the side, resized)
# Pixels, for the candidate search: the query moved by each (the first, unmoved, is the query as it is),
# and the base's zoomed views centred at each offset (a recrop is rarely centred).
QUERY_SHIFTS = ((0, 0),) + tuple((dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2) if dy or dx)
CROP_OFFSETS = tuple((dy, dx) for dy in (-3, 0, 3) for dx in (-3, 0, 3))
CANDIDATES = 4  # nearest base images kept per search
RESCORED = 8  # distinct candidates re-scored per query: those with the best first-stage similarity
FINALISTS = 2  # candidates per query re-scored at full resolution
SHIFT = 4  # pixels each way in the re-scoring at full resolution (2 at 16x16): a recrop's offset
CHUNK = 4096  # pairs re-scored per block (about 60 MB of intermediate tensors)


def zoomed(images: torch.Tensor, zoom: float, dy: int = 0, dx: int = 0) -> torch.Tensor:
    """The centre of each image (or the point dy, dx pixels from it) enlarged by `zoom`, back to its own
    size (bilinear, antialiased); the window stays inside the image."""
    if zoom == 1.0:
        return images
    size = images.shape[-1]
    keep = round(size / zoom)
    top, left = (min(max((size - keep) // 2 + d, 0), size - keep) for d in (dy, dx))
    centre = images[..., top : top + keep, left : left + keep]
    return F.interpolate(centre, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Each image moved dy pixels down and dx right, the uncovered edge filled with the edge's pixels."""
    if dy == dx == 0:
        return images
    p = max(abs(dy), abs(dx))
    size = images.shape[-1]
    padded = F.pad(images, (p, p, p, p), mode="replicate")
    return padded[..., p - dy : p - dy + size, p - dx : p - dx + size]


def _window_sums(x: torch.Tensor, window: int) -> torch.Tensor:
    """[..., S, S] sums over every window x window square at stride 1, from an integral image."""
    s = F.pad(x, (1, 0, 1, 0)).cumsum(2).cumsum(3)
    return s[..., window:, window:] - s[..., :-window, window:] - s[..., window:, :-window] + s[..., :-window, :-window]


def _best_correlation(query: torch.Tensor, candidate: torch.Tensor, shift: int) -> torch.Tensor:
    """[P] best channel-averaged correlation of each query's centre crop slid over its candidate, up to
    `shift` pixels each way."""
    pairs, channels, size, _ = query.shape
    window = size - 2 * shift
    crop = query[..., shift : shift + window, shift : shift + window]
    crop = crop - crop.mean(dim=(2, 3), keepdim=True)  # mean-free, so the dot product ignores the window's mean
    candidate = candidate - candidate.mean(dim=(2, 3), keepdim=True)  # smaller sums: exact in float32
    # One group per (pair, channel): each crop is the kernel slid over its own candidate, at every shift.
    dot = F.conv2d(
        candidate.reshape(1, pairs * channels, size, size),
        crop.reshape(pairs * channels, 1, window, window),
        groups=pairs * channels,
    ).reshape(pairs, channels, -1)
    area = window * window
    sums = _window_sums(candidate, window).flatten(2)
    squares = _window_sums(candidate * candidate, window).flatten(2)
    window_norm = (squares - sums * sums / area).clamp_min(0).sqrt()
    crop_norm = crop.flatten(2).norm(dim=2, keepdim=True)
    # A flat channel (a grey image's, or a sky) carries no evidence: it counts as uncorrelated.
    correlation = dot / (crop_norm * window_norm).clamp_min(1e-3)
    return correlation.mean(dim=1).amax(dim=1)


def aligned_similarity(query: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """[P] the audit's similarity of query[i] and candidate[i] (uint8 or float images [P, C, 32, 32]): the
    mean of their aligned correlation and their fine detail's, at full resolution."""
    return (aligned_correlation(query, candidate) + aligned_correlation(detail(query), detail(candidate))) / 2


def detail(images: torch.Tensor) -> torch.Tensor:
    """Each image minus its local mean over 5x5 pixels: the texture and edges that a copy keeps and a
    look-alike photograph does not."""
    x = images.float()
    return x - F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)


@torch.no_grad()
def aligned_correlation(query: torch.Tensor, candidate: torch.Tensor, full: bool = True) -> torch.Tensor:
    """[P] best correlation of query[i] and candidate[i] over the alignments, at full resolution or
    (`full` false) at 16x16."""
    half, shift = (lambda x: x, SHIFT) if full else (lambda x: F.avg_pool2d(x, 2), SHIFT // 2)
    best = torch.full((len(query),), -1.0)
    for start in range(0, len(query), CHUNK):
        q = query[start : start + CHUNK].float()
        c = candidate[start : start + CHUNK].float()
        scores = []
        for flipped in (c, c.flip(-1)):
            for zoom in ZOOMS:
                scores.append(_best_correlation(half(q), half(zoomed(flipped, zoom)), shift))
                if zoom != 1.0:  # the other direction: the query is the enlarged crop's source
                    scores.append(_best_correlation(half(zoomed(q, zoom)), half(flipped), shift))
        best[start : start + CHUNK] = torch.stack(scores).amax(dim=0)
    return best


def query_views(images: torch.Tensor, center: torch.Tensor, zooms=ZOOMS) -> list[torch.Tensor]:
    """Unit 8x8 pixel features of every view of each image: as it is and mirrored, at each zoom, at each
    of QUERY_SHIFTS. The first view is the image as it is."""
    from .audit import pixel_features, unit_rows

    x = images.float()
    return [
        unit_rows(pixel_features(shifted(zoomed(source, zoom), dy, dx)), center)
        for source in (x, x.flip(-1))
        for zoom in zooms
        for dy, dx in QUERY_SHIFTS
    ]


def base_views(images: torch.Tensor, center: torch.Tensor, zooms=ZOOMS) -> list[torch.Tensor]:
    """Unit 8x8 pixel features of each base image as it is, then enlarged by each zoom above 1 about each
    of CROP_OFFSETS."""
    from .audit import pixel_features, unit_rows

    x = images.float()
    views = [(1.0, 0, 0)] + [(zoom, dy, dx) for zoom in zooms if zoom != 1.0 for dy, dx in CROP_OFFSETS]
    return [unit_rows(pixel_features(zoomed(x, zoom, dy, dx)), center) for zoom, dy, dx in views]


@torch.no_grad()
def candidate_pairs(queries: list, bases: list, k: int = CANDIDATES, same: bool = False) -> torch.Tensor:
    """[N, RESCORED] indices into the base: each query's distinct candidates with the best first-stage
    similarity, from the k nearest base images of every search. The searches pair every query view
    (query_views) with the base as it is, and the query as it is and mirrored with every zoomed base view.
    With `same` (the query images are the base), an image is never its own candidate."""
    from .audit import similarity_blocks

    as_is, mirrored = queries[0], queries[len(queries) // 2]  # query_views: the mirrored half follows
    searches = [(q, bases[0]) for q in queries] + [(q, b) for b in bases[1:] for q in (as_is, mirrored)]
    similarity, index = [], []
    for query, base in searches:
        top = [block.topk(min(k, block.shape[1]), dim=1) for block in similarity_blocks(query, base, same)]
        similarity.append(torch.cat([t.values for t in top]))
        index.append(torch.cat([t.indices for t in top]))
    return _best_distinct(torch.cat(similarity, dim=1), torch.cat(index, dim=1), RESCORED)


def _best_distinct(similarity: torch.Tensor, index: torch.Tensor, keep: int) -> torch.Tensor:
    """[N, keep] per row: the distinct indices with the highest similarity (a repeat counts at its best)."""
    by_similarity = similarity.argsort(dim=1, descending=True)
    similarity, index = similarity.gather(1, by_similarity), index.gather(1, by_similarity)
    by_index = index.argsort(dim=1, stable=True)  # each index's best similarity comes first among its repeats
    ordered = index.gather(1, by_index)
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    similarity = similarity.gather(1, by_index).masked_fill(repeat, -3.0)
    best = similarity.topk(min(keep, similarity.shape[1]), dim=1).indices
    return ordered.gather(1, best)


def aligned_nearest(
    query: torch.Tensor, base: torch.Tensor, center: torch.Tensor, same: bool = False, zooms=ZOOMS
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query image, its best-aligned base image: (re-scored similarity, index)."""
    picks = candidate_pairs(query_views(query, center, zooms), base_views(base, center, zooms), same=same)
    # Within a split of fewer images than the candidates wanted, an image can only be its own candidate.
    itself = (picks == torch.arange(len(query)).unsqueeze(1)) if same else torch.zeros_like(picks, dtype=torch.bool)
    screened = _rescored(query, base, picks, lambda q, c: aligned_correlation(q, c, full=False))
    chosen = screened.masked_fill(itself, -2.0).topk(min(FINALISTS, picks.shape[1]), dim=1).indices
    finalists = picks.gather(1, chosen)
    scores = _rescored(query, base, finalists, aligned_similarity).masked_fill(itself.gather(1, chosen), -2.0)
    best = scores.max(dim=1)
    return best.values, finalists.gather(1, best.indices.unsqueeze(1)).squeeze(1)


def _rescored(query: torch.Tensor, base: torch.Tensor, picks: torch.Tensor, score) -> torch.Tensor:
    """[N, width] score(query images, base images) of each query image with each of its picked ones."""
    width = picks.shape[1]
    block = max(1, CHUNK // width)  # queries per block of re-scored pairs
    return torch.cat(
        [
            score(query[start : start + block].repeat_interleave(width, 0), base[rows.flatten()])
            for start, rows in zip(range(0, len(picks), block), picks.split(block))
        ]
    ).view(-1, width)
