"""Denoise an image stored as zarr or OME-TIFF, chunk by chunk, without loading it; write zarr.

    python examples/denoise_zarr.py INPUT.zarr OUTPUT.zarr [--sigma S] [--keep-dtype]
    python examples/denoise_zarr.py INPUT.ome.tif OUTPUT.zarr [--sigma S] [--keep-dtype]
    python examples/denoise_zarr.py STACK.ome.tif OUTPUT.zarr --axes ZYX   # as volumes (3-D)
    python examples/denoise_zarr.py --demo /tmp/trd-demo        # makes a 2 GB noisy stack first

The input is opened lazily with dask (one task per chunk; a TIFF through tifffile's zarr view of
its tiles or strips, nothing is read up front); `denoise_trd` returns a lazy dask array whose
chunks overlap by the model's halo, so the result equals whole-image denoising; `to_zarr`
computes and writes it chunk by chunk with a progress bar. Memory stays at a few chunks per
worker (for untiled, contiguous TIFFs: a few planes). `--sigma` is in the data's own units (a
12-bit camera's uint16: camera units). `--keep-dtype` keeps the result in the input's units and
type (uint16 stays uint16); without it, integer input gives floats on img_as_float's scale.
``--axes ZYX`` (or ``TZYX`` ..., or ``file``: the TIFF's own axes) denoises every (z, y, x)
volume as one with the volume models; the chunks then hold ``--planes`` planes (16) and
overlap by the model's reach in z too, so memory stays at a few such chunks.
"""

import argparse
import time
from pathlib import Path

import dask.array as da
import numpy as np
from dask.diagnostics import ProgressBar

from skimage_trd import denoise_trd


def make_demo(folder, shape=(32, 4096, 4096), chunks=(1, 1024, 1024), sigma=0.1):
    """A noisy float32 stack (2 GiB for the default shape), written chunk by chunk."""
    from skimage import data

    reps = (-(-shape[1] // 512), -(-shape[2] // 512))
    camera = da.from_array((data.camera() / 255.0).astype(np.float32), chunks=512)
    clean = da.tile(camera, reps)[: shape[1], : shape[2]].rechunk(chunks[1:])  # lazy: any size
    planes = [clean + sigma * da.random.default_rng(i).standard_normal(shape[1:], chunks=chunks[1:],
                                                                        dtype=np.float32)
              for i in range(shape[0])]
    noisy = da.stack(planes).rechunk(chunks)
    path = Path(folder) / "noisy.zarr"
    with ProgressBar():
        noisy.to_zarr(str(path), overwrite=True)
    return path


def open_lazy(path, chunk=1024, planes=1):
    """(lazy dask array, channel axis, closer) for a zarr array or a (OME-)TIFF's first series.

    TIFF strips are often a few rows high, so the TIFF view is rechunked to tiles of at most
    ``chunk`` (one plane deep): the halo stays small against the tile. (A contiguous, untiled
    TIFF is one chunk per plane: each task then reads its whole plane, so memory is bounded by
    a plane rather than a tile.) Samples ('S' in the TIFF's axes, e.g. RGB) are the channel axis.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return da.from_zarr(str(path)), None, lambda: None
    import tifffile
    import zarr

    with tifffile.TiffFile(str(path)) as tif:
        axes = tif.series[0].axes
    open_lazy.tiff_axes = axes
    store = tifffile.imread(str(path), aszarr=True)  # tiles/strips become zarr chunks
    z = zarr.open(store, mode="r")
    if not hasattr(z, "shape"):  # a pyramid (multiscale group): take full resolution
        z = z["0"]
    image = da.from_zarr(z)
    channel_axis = axes.index("S") if "S" in axes else None
    spatial = [ax for ax in range(image.ndim) if ax != channel_axis][-2:]
    chunks = {ax: 1 for ax in range(image.ndim)}
    if planes > 1 and image.ndim - (channel_axis is not None) >= 3:  # volumes: slabs of planes
        z = [ax for ax in range(image.ndim) if ax != channel_axis][-3]
        chunks[z] = min(planes, image.shape[z])
    chunks.update({ax: min(chunk, image.shape[ax]) for ax in spatial})
    if channel_axis is not None:
        chunks[channel_axis] = image.shape[channel_axis]
    return image.rechunk(chunks), channel_axis, store.close


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", nargs="?", help="zarr array or (OME-)TIFF file")
    ap.add_argument("output", nargs="?")
    ap.add_argument("--sigma", type=float, default=None,
                    help="noise level in the data's own units (default: estimated per plane)")
    ap.add_argument("--keep-dtype", action="store_true",
                    help="the result in the input's dtype and units (integers rounded)")
    ap.add_argument("--demo", metavar="FOLDER", help="make a noisy demo stack in FOLDER and use it")
    ap.add_argument("--shape", default="32,4096,4096", help="demo stack shape")
    ap.add_argument("--chunk", type=int, default=1024,
                    help="chunk edge (rows, columns) of the demo stack and of TIFF input")
    ap.add_argument("--axes", default=None,
                    help="axis letters (e.g. ZYX, TZYX; 'file': the TIFF's): with a Z, volumes")
    ap.add_argument("--planes", type=int, default=16, help="volumes: planes per chunk")
    args = ap.parse_args(argv)
    if args.demo:
        shape = tuple(int(n) for n in args.shape.split(","))
        args.input = make_demo(args.demo, shape=shape, chunks=(1, args.chunk, args.chunk))
        args.output = Path(args.demo) / "denoised.zarr"
    if not args.input or not args.output:
        ap.error("give INPUT.zarr and OUTPUT.zarr, or --demo FOLDER")
    volume = args.axes is not None
    noisy, channel_axis, close = open_lazy(args.input, args.chunk,
                                           planes=args.planes if volume else 1)
    try:
        print(f"input {args.input}: shape {noisy.shape}, chunks {noisy.chunksize}, "
              f"{noisy.nbytes / 2**30:.2f} GiB of {noisy.dtype}")
        axes = args.axes
        if axes is not None and axes.lower() == "file":
            axes = getattr(open_lazy, "tiff_axes", None)
            if axes is None:
                ap.error("--axes file reads a TIFF's axes: give the letters for zarr input")
            axes = axes.replace("S", "C")
        kw = dict(axes=axes) if axes else dict(channel_axis=channel_axis)
        lazy = denoise_trd(noisy, args.sigma, preserve_range=args.keep_dtype,
                           preserve_dtype=args.keep_dtype, **kw)
        t0 = time.perf_counter()
        with ProgressBar():
            lazy.to_zarr(str(args.output), overwrite=True)
    finally:
        close()
    print(f"wrote {args.output} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
