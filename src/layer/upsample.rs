//! The upsampling layer (`nn.Upsample` with integer factors).

use super::spec::LayerSpec;
use super::{Backward, Ctx, Layer};
use crate::error::Result;
use crate::kernels::accum::Accum;
use crate::kernels::upsample::{UpsampleMode, upsample2d_backward, upsample2d_forward};
use crate::shape::{Shape3, Shape4};

#[derive(Debug)]
pub(crate) struct Upsample {
    input: Shape3,
    scale: [usize; 2],
    mode: UpsampleMode,
}

impl Upsample {
    pub fn new(
        spec: &LayerSpec,
        scale: [usize; 2],
        mode: UpsampleMode,
        input: Shape3,
    ) -> Result<Self> {
        if scale[0] == 0 || scale[1] == 0 || input[1] == 0 || input[2] == 0 {
            return Err(super::shape_error(
                spec,
                input,
                "the factors must be at least 1 and the plane not empty",
            ));
        }
        let too_big = input[1]
            .checked_mul(scale[0])
            .zip(input[2].checked_mul(scale[1]));
        let fits = too_big.and_then(|(h, w)| h.checked_mul(w)?.checked_mul(input[0]));
        if fits.is_none_or(|n| n > crate::error::MAX_ELEMENTS) {
            return Err(super::shape_error(spec, input, "the output is too large"));
        }
        Ok(Upsample { input, scale, mode })
    }
    fn shape(&self, n: usize) -> Shape4 {
        Shape4::new(n, self.input[0], self.input[1], self.input[2])
    }
}

impl Layer for Upsample {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Upsample {
            scale: self.scale,
            mode: self.mode,
        }
    }
    fn out_shape(&self) -> Shape3 {
        [
            self.input[0],
            self.input[1] * self.scale[0],
            self.input[2] * self.scale[1],
        ]
    }
    fn forward(
        &mut self,
        n: usize,
        _: &[f32],
        x: &[f32],
        y: &mut [f32],
        _: &mut Ctx<'_>,
    ) -> Result<()> {
        upsample2d_forward(self.shape(n), self.scale, self.mode, x, y)
    }
    fn backward(&mut self, b: Backward<'_>, _: &mut Ctx<'_>) -> Result<()> {
        let Backward { n, dy, dx, .. } = b;
        match dx {
            Some(dx) => {
                upsample2d_backward(self.shape(n), self.scale, self.mode, dy, dx, Accum::Replace)
            }
            None => Ok(()),
        }
    }
}
