from postfleet.cleanup.main import main

main()
