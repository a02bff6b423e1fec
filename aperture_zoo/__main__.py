from aperture_zoo.cli import main

main()
