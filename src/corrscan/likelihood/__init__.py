"""Image-to-structure likelihood (replaces CryoLike).

Polar Fourier grids with exact quadrature, exact image transforms, templates from maps and atom
models, cross-correlation over displacements and all in-plane rotations with per-image
astigmatic CTFs, optimal poses, per-pose / optimal-pose / integrated marginal log-likelihoods,
and CryoLike's file workflow. See ``docs/likelihood.md``.
"""

from corrscan.likelihood.ctf import CtfParams, ctf_polar
from corrscan.likelihood.grid import (
    PolarGrid,
    ViewingGrid,
    displacement_grid,
    viewing_grid_fibonacci,
    viewing_grid_from_angles,
    viewing_grid_gauss_legendre,
)
from corrscan.likelihood.kernel import (
    OptimalPose,
    SearchResult,
    log_likelihood_at_poses,
    log_likelihood_from_inner_products,
    pose_inner_products,
    search,
)
from corrscan.likelihood.stacks import PolarImages, PolarTemplates, images_from_real_space
from corrscan.likelihood.templates import (
    atoms_to_polar_templates,
    map_to_polar_templates,
    read_atoms,
    templates_from_file,
)
from corrscan.likelihood.workflow import (
    DisplacementConfig,
    ImageParameters,
    LikelihoodFiles,
    configure_displacement,
    configure_likelihood_files,
    convert_particle_stacks,
    convert_particle_stacks_from_indexed_cryosparc_file,
    convert_particle_stacks_from_indexed_star_file,
    convert_particle_stacks_from_paired_star_and_mrc_files,
    make_templates_from_inputs,
    run_likelihood_full_cross_correlation,
    run_likelihood_optimal_pose,
    stack_index,
    stack_name,
)

__all__ = [
    "CtfParams",
    "DisplacementConfig",
    "ImageParameters",
    "LikelihoodFiles",
    "OptimalPose",
    "PolarGrid",
    "PolarImages",
    "PolarTemplates",
    "SearchResult",
    "ViewingGrid",
    "atoms_to_polar_templates",
    "configure_displacement",
    "configure_likelihood_files",
    "convert_particle_stacks",
    "convert_particle_stacks_from_indexed_cryosparc_file",
    "convert_particle_stacks_from_indexed_star_file",
    "convert_particle_stacks_from_paired_star_and_mrc_files",
    "ctf_polar",
    "displacement_grid",
    "images_from_real_space",
    "log_likelihood_at_poses",
    "log_likelihood_from_inner_products",
    "make_templates_from_inputs",
    "map_to_polar_templates",
    "pose_inner_products",
    "read_atoms",
    "run_likelihood_full_cross_correlation",
    "run_likelihood_optimal_pose",
    "search",
    "stack_index",
    "stack_name",
    "templates_from_file",
    "viewing_grid_fibonacci",
    "viewing_grid_from_angles",
    "viewing_grid_gauss_legendre",
]
