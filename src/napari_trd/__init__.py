"""napari plugin for skimage-trd: TRD denoising, JPEG deblocking and training as dock widgets.

The widgets only call ``skimage_trd``'s public functions; the work runs in napari thread
workers, with progress bars and a cancel button.
"""

__all__ = ["DenoiseWidget", "DeblockWidget", "TrainWidget"]


def __getattr__(name):  # keep `import napari_trd` light: Qt is loaded with the widgets
    if name in __all__:
        from . import _widgets

        return getattr(_widgets, name)
    raise AttributeError(name)
