from postfleet.filter.main import main

main()
